"""Container runtimes: the driver interface, driver discovery and leak prevention."""

from rlmesh.runtime.discovery import AUTO_ORDER, get_driver, installed_drivers
from rlmesh.runtime.driver import (
    Availability,
    ContainerHandle,
    ContainerInfo,
    Health,
    ImageInfo,
    ImageRecipe,
    ProgressCallback,
    RunSpec,
    RuntimeDriver,
)
from rlmesh.runtime.labels import owner_is_gone, owner_labels
from rlmesh.runtime.reaper import reap_orphans

__all__ = [
    "AUTO_ORDER",
    "Availability",
    "ContainerHandle",
    "ContainerInfo",
    "Health",
    "ImageInfo",
    "ImageRecipe",
    "ProgressCallback",
    "RunSpec",
    "RuntimeDriver",
    "get_driver",
    "installed_drivers",
    "owner_is_gone",
    "owner_labels",
    "reap_orphans",
]
