"""appliance: a systemd-native machine appliance that turns GPU and API machines into workers of one Redis job pool."""

__version__ = "0.1.0"
