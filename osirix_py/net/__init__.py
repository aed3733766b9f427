"""pynetdicom adapters: the listener (SCP) and the client side (SCU)."""
