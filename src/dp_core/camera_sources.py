"""Which camera each image stream was recorded from: its native frame size and device serial.

The demonstration recorder stores them in the dataset (attribute ``cameras``, by dataset key), dp-train
carries them into the policy file (extra ``cameras``, by observation key), and the policy node refuses
frames that do not match: frames of another size would be resized (squashed) into the policy's input,
and cameras whose serials were swapped in a launch argument swap the policy's views, both silently.
A serial is known on the real cell (the camera node's diagnostics name it); the simulated cameras have none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from .config import ShapeMeta

ATTRIBUTE = "cameras"  # dataset attribute and policy-file extra key
DIAGNOSTICS_TOPIC = "/diagnostics"  # where the camera node names each camera's serial (also read from bags)
_CAMERA_STATUS = re.compile(r": (camera_\d+)$")  # the camera node's diagnostic status names: "<node>: camera_<i>"


@dataclass(frozen=True)
class CameraSource:
    height: int  # native frame size, before any resizing
    width: int
    serial: str = ""  # "" when unknown

    @classmethod
    def from_dict(cls, data: Mapping) -> CameraSource:
        return cls(int(data["height"]), int(data["width"]), str(data.get("serial", "")))

    def to_dict(self) -> dict:
        return asdict(self)

    def mismatch(self, live: CameraSource) -> str | None:
        """Why ``live`` is not (or not yet known to be) this camera; None when it is. A recorded serial must
        be matched by the live one; with none recorded (a simulated camera) the size decides."""
        if (live.height, live.width) != (self.height, self.width):
            return f"frames are {live.height}x{live.width}, recorded at {self.height}x{self.width}"
        if self.serial and not live.serial:
            return (f"recorded from camera serial {self.serial}, and this camera's serial is not known yet (the "
                    "camera node names it in /diagnostics about once a second; another camera driver never does)")
        if self.serial and live.serial != self.serial:
            return f"camera serial {live.serial}, recorded from {self.serial} (cameras swapped or replaced?)"
        return None

    def merged(self, later: CameraSource) -> CameraSource:
        """This record with a serial learnt later filled in."""
        return CameraSource(self.height, self.width, self.serial or later.serial)


def with_new_episode(recorded: Mapping[str, CameraSource], episode: Mapping[str, CameraSource]) -> dict[str, CameraSource]:
    """The dataset's cameras once an episode from ``episode``'s cameras (already checked against them) is added:
    new keys join, and a recorded camera without serial takes the one the episode names."""
    return {**recorded, **{key: recorded[key].merged(cam) if key in recorded else cam for key, cam in episode.items()}}


def read_cameras(data: Mapping | None) -> dict[str, CameraSource]:
    """``{key: CameraSource}`` from a dataset attribute or policy-file extra (absent: empty)."""
    return {key: CameraSource.from_dict(value) for key, value in (data or {}).items()}


def write_cameras(cameras: Mapping[str, CameraSource]) -> dict[str, dict]:
    return {key: cam.to_dict() for key, cam in cameras.items()}


def policy_cameras(dataset_cameras: Mapping[str, CameraSource], shape_meta: ShapeMeta) -> dict[str, CameraSource]:
    """The recorded cameras of the policy's image observations, by observation key (dataset key = ``source``)."""
    out = {}
    for key in shape_meta.rgb_keys:
        source = shape_meta.obs[key].source or key
        if source in dataset_cameras:
            out[key] = dataset_cameras[source]
    return out


def camera_name(topic: str) -> str:
    """The camera a topic belongs to: its first name, ``/camera_0/color/image_raw`` -> ``camera_0``."""
    return topic.strip("/").split("/")[0]


def cameras_to_confirm(used: Mapping[str, tuple[str, str]], cameras: Mapping[str, CameraSource]) -> dict[str, str]:
    """``{key: camera name}`` of the used image observations (key -> (topic, message type)) recorded with a
    serial: their frames wait until the camera node's ``/diagnostics`` names that serial."""
    return {key: camera_name(topic) for key, (topic, type_name) in used.items()
            if type_name == "Image" and key in cameras and cameras[key].serial}


def serials_from_statuses(statuses: Iterable) -> dict[str, str]:
    """``{camera name: serial}`` from ``/diagnostics`` statuses (anything with ``name`` and ``hardware_id``:
    a DiagnosticStatus message, live or read from a bag)."""
    out = {}
    for status in statuses:
        match = _CAMERA_STATUS.search(status.name)
        if match and status.hardware_id:
            out[match.group(1)] = status.hardware_id
    return out


def serials_by_key(key_cameras: Mapping[str, str], statuses: Iterable) -> dict[str, str]:
    """``{key: serial}`` for the image keys (key -> camera name) whose camera the statuses name."""
    serials = serials_from_statuses(statuses)
    return {key: serials[camera] for key, camera in key_cameras.items() if camera in serials}
