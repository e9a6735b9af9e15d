"""deploybot's front: the aiohttp server (Slack, GitHub, JSON API, agent protocol) and the ``deploybot`` command."""
