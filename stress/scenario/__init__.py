"""Scenario files: YAML -> validated, typed, frozen objects."""

from stress.scenario.loader import LoadedScenario, load_scenario, parse_scenario, phantom_spec
from stress.scenario.schema import Scenario

__all__ = ["LoadedScenario", "Scenario", "load_scenario", "parse_scenario", "phantom_spec"]
