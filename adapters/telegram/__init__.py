"""The Telegram bot adapter: aiogram 3 routers and FSM in front of a job executor.

Import `app` for the bot itself; `settings` (its config section) stays importable without aiogram.
"""
