"""The watched-folder adapter (`artchain watch DIR`); see `folder` for the delivery guarantees."""
