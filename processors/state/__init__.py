"""State rebuilt from topics: the one table abstraction behind the settings table and the sinks'
ledgers, and sync history read from its topic."""
