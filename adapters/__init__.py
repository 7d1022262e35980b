"""Adapters feed images to the engine (CLI, Telegram, watched folder). They never touch torch."""
