"""``python -m bot`` runs the ``deploybot`` command."""

from bot.cli import main

raise SystemExit(main())
