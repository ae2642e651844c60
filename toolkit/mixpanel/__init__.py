"""Pulling from Mixpanel: a service-account client (client.py) inside each API's rate budget (budget.py),
``pull`` of events and profiles into the landing folder (pull.py), and an emulator of Mixpanel's export and
query APIs on 127.0.0.1 (emulator.py). Nothing here is imported by ``import toolkit``."""
