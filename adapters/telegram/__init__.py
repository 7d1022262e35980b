"""The Telegram bot adapter: aiogram 3 routers and FSM in front of a job executor."""
from .app import create_bot, create_dispatcher, run_polling, run_webhook, serve
from .handlers import describe_failure

__all__ = ["create_bot", "create_dispatcher", "describe_failure", "run_polling", "run_webhook", "serve"]
