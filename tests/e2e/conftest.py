"""The e2e tier's fixtures, by name: `kubectl`, `helm_release` (the chart installed), `operator`, `progress`."""

from tests.e2e.cluster import helm_release, kubectl, operator, progress  # noqa: F401
