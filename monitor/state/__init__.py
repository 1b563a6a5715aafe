"""The agent's state: the results store, facts shared between results, health, and the state database."""
