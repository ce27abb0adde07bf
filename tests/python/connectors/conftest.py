"""pytest hooks of the engine-connector tests: the fixtures live in connector_fixtures."""

from connector_fixtures import stratad  # noqa: F401  (registers the fixture)
