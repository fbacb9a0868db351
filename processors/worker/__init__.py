"""The worker's runtime: the Faust app (lifecycle, producer, web views, timers), metrics wiring,
logs, readiness. The only package that imports Faust (an import contract)."""
