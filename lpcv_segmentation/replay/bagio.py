"""Read and write the rosbag2 flights that ``bag_eval`` replays, with the ``rosbags`` package.

``rosbags`` is pure Python (no ROS install needed) and writes the same rosbag2 directories
``ros2 bag record`` does: a storage file (MCAP by default, or SQLite 3) plus ``metadata.yaml``.
Bags are written in rosbag2 format version 8, which ``ros2 bag info`` / ``ros2 bag play``
read on Humble, Jazzy and Kilted (Humble needs ``ros-humble-rosbag2-storage-mcap`` for MCAP;
SQLite 3 works everywhere). ``sensor_msgs/msg/Image`` and ``std_msgs/msg/String`` are the
same messages, with the same type hash, in all three distributions.

A flight bag holds, per camera frame, two images with the same header stamp:

    /camera/image_raw  sensor_msgs/msg/Image  rgb8   the camera frame
    /camera/gt_mask    sensor_msgs/msg/Image  mono8  class index per pixel (ground truth)

A recorded camera topic may also be ``sensor_msgs/msg/CompressedImage`` (JPEG or PNG), decoded
as the node decodes it (``core.imaging.msg_to_rgb``).

``read_frames`` pairs them by stamp and checks them; anything wrong with the bag (missing,
corrupt, truncated, without the camera topic, a ground truth of the wrong size or encoding)
raises ``BagError`` with a message naming the bag and topic. A reader given ``on_malformed``
leaves out, and reports to it, each camera frame that is malformed (a message that does not
deserialise, an unsupported encoding, a data length that is not height x step, compressed
bytes that do not decode) instead. No torch here: this runs on the
drone side as well (``rosbags`` itself needs Python 3.10+; the rest of the package does not).
"""
import sqlite3
import struct
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from lpcv_segmentation.core.classes import IGNORE_INDEX, NUM_CLASSES
from lpcv_segmentation.core.imaging import ImageConversionError, msg_to_rgb

__all__ = ["CAMERA_TOPIC", "GT_TOPIC", "MASK_TOPIC", "DETECTIONS_TOPIC", "STORAGES", "BagError",
           "BagWriter", "Frame", "FrameReader", "MalformedFrame", "TopicSummary", "bag_topics",
           "read_frames", "stamp_to_ns"]

CAMERA_TOPIC = "/camera/image_raw"
GT_TOPIC = "/camera/gt_mask"
MASK_TOPIC = "/seg/mask"
DETECTIONS_TOPIC = "/seg/detections"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
STORAGES = ("mcap", "sqlite3")
# Version 8 stores each topic's QoS as a YAML string, the form Humble's reader expects;
# version 9 (Jazzy's own) changed it to a list, which Humble cannot read.
BAG_VERSION = 8
# How many camera frames may wait for their ground truth before the oldest is given up on.
# rosbags writes both at the same log time; a bag recorded live may interleave them a little.
PAIRING_WINDOW = 32

PathLike = Union[str, Path]


class BagError(ValueError):
    """A bag that cannot be read or replayed; the message names the bag and the topic."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    # Image, Header, Time and String are identical (same RIHS01 hash) in Humble, Jazzy, Kilted.
    return get_typestore(Stores.ROS2_HUMBLE)


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) -> integer nanoseconds."""
    return int(stamp.sec) * 1000000000 + int(stamp.nanosec)


def _ns_to_sec_nanosec(stamp_ns: int) -> Tuple[int, int]:
    return int(stamp_ns // 1000000000), int(stamp_ns % 1000000000)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
class BagWriter:
    """Write images and strings to a new rosbag2 directory; use as a context manager.

    The bag's log time of each message is its header stamp, as in a bag recorded live with
    simulated time. A failed write leaves no half bag that looks complete: without ``close``
    there is no ``metadata.yaml``.
    """

    def __init__(self, path: PathLike, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise BagError("%s: unknown storage %r (choose from %s)"
                           % (path, storage, ", ".join(STORAGES)))
        self.path = Path(path)
        self._typestore = _typestore()
        self._types = self._typestore.types
        try:
            self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugins[storage])
            self._writer.open()
        except (WriterError, OSError) as error:
            raise BagError("%s: cannot create bag: %s" % (self.path, error)) from None
        self._connections: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}

    def _connection(self, topic: str, msgtype: str):
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self._connections[topic] = connection
            self.counts[topic] = 0
        return connection

    def _header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = _ns_to_sec_nanosec(stamp_ns)
        return self._types["std_msgs/msg/Header"](
            stamp=self._types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
            frame_id=frame_id)

    def write_image(self, topic: str, stamp_ns: int, image: np.ndarray, encoding: str,
                    frame_id: str = "camera", log_time_ns: Optional[int] = None) -> None:
        """Write an (H, W) mono8 or (H, W, 3) rgb8 array as sensor_msgs/msg/Image."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        channels = 1 if image.ndim == 2 else int(image.shape[2])
        msg = self._types[IMAGE_TYPE](
            header=self._header(stamp_ns, frame_id), height=int(image.shape[0]),
            width=int(image.shape[1]), encoding=encoding, is_bigendian=0,
            step=int(image.shape[1]) * channels, data=image.reshape(-1))
        self._write(topic, IMAGE_TYPE, msg, stamp_ns if log_time_ns is None else log_time_ns)

    def write_image_msg(self, topic: str, msg, log_time_ns: int) -> None:
        """Copy a sensor_msgs/Image from rclpy (or anything with its fields) into the bag."""
        data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
        copy = self._types[IMAGE_TYPE](
            header=self._header(stamp_to_ns(msg.header.stamp), msg.header.frame_id),
            height=int(msg.height), width=int(msg.width), encoding=str(msg.encoding),
            is_bigendian=int(msg.is_bigendian), step=int(msg.step), data=data)
        self._write(topic, IMAGE_TYPE, copy, log_time_ns)

    def write_compressed(self, topic: str, stamp_ns: int, data: bytes, fmt: str,
                         frame_id: str = "camera") -> None:
        """Write encoded image bytes (``fmt``: "jpeg", "png") as sensor_msgs/msg/CompressedImage."""
        msg = self._types[COMPRESSED_TYPE](header=self._header(stamp_ns, frame_id), format=fmt,
                                           data=np.frombuffer(bytes(data), dtype=np.uint8))
        self._write(topic, COMPRESSED_TYPE, msg, stamp_ns)

    def write_string(self, topic: str, text: str, log_time_ns: int) -> None:
        """Write std_msgs/msg/String."""
        self._write(topic, STRING_TYPE, self._types[STRING_TYPE](data=text), log_time_ns)

    def _write(self, topic: str, msgtype: str, msg, log_time_ns: int) -> None:
        connection = self._connection(topic, msgtype)
        self._writer.write(connection, int(log_time_ns),
                           self._typestore.serialize_cdr(msg, msgtype))
        self.counts[topic] += 1

    def close(self) -> None:
        """Finish the storage file and write metadata.yaml."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def abort(self) -> None:
        """Stop without metadata.yaml (the bag is then unreadable, not silently short)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.abort()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
class TopicSummary(NamedTuple):
    msgtype: str
    count: int


class Frame(NamedTuple):
    """One camera frame of a flight bag, with its ground truth when the bag has one."""
    index: int  # position among the bag's camera frames, from 0
    stamp_ns: int  # header stamp
    frame_id: str
    rgb: np.ndarray  # (H, W, 3) uint8
    gt: Optional[np.ndarray]  # (H, W) uint8 class indices (255: ignore), or None if unpaired


class MalformedFrame(NamedTuple):
    """A camera frame left out by a reader given ``on_malformed``."""
    index: int  # position among the bag's camera frames, from 0 (it still takes its place)
    stamp_ns: int  # header stamp, or the log time of a message that does not deserialise
    message: str  # one line naming the bag, the topic and the stamp, and what is wrong


def _storage_errors() -> Tuple[type, ...]:
    """What the storage back ends raise on a damaged file, beyond rosbags' own errors."""
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError
    errors = [AnyReaderError, ReaderError, SerdeError, sqlite3.DatabaseError, struct.error,
              zlib.error, EOFError, OSError, KeyError, IndexError, ValueError, AssertionError]
    try:  # compressed MCAP chunks
        from backports import zstd
        errors.append(zstd.ZstdError)
    except (ImportError, AttributeError):
        pass
    return tuple(errors)


def _open_reader(path: Path):
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise BagError("%s: no such bag" % path)
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError("%s: not a rosbag2 directory (no metadata.yaml; the recording was "
                       "interrupted or this is not a bag)" % path)
    reader = AnyReader([path], default_typestore=_typestore())
    try:
        reader.open()
    except _storage_errors() as error:
        raise BagError("%s: cannot open bag (corrupt or truncated?): %s"
                       % (path, error or type(error).__name__)) from None
    return reader


def bag_topics(path: PathLike) -> Dict[str, TopicSummary]:
    """Topic -> (message type, message count), as ``ros2 bag info`` lists them."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        return {topic: TopicSummary(info.msgtype or "", int(info.msgcount))
                for topic, info in reader.topics.items()}
    finally:
        reader.close()


def _check_topic(path: Path, topics: Dict[str, object], topic: str, role: str,
                 msgtypes: Tuple[str, ...] = (IMAGE_TYPE,)) -> None:
    if topic not in topics:
        raise BagError("%s: no %s topic %s in the bag (topics: %s)"
                       % (path, role, topic, ", ".join(sorted(topics)) or "none"))
    msgtype = topics[topic].msgtype
    if msgtype not in msgtypes:
        raise BagError("%s: topic %s is %s; expected %s" % (path, topic, msgtype,
                                                            " or ".join(msgtypes)))


def _gt_array(path: Path, topic: str, msg) -> np.ndarray:
    if msg.encoding not in ("mono8", "8UC1"):
        raise BagError("%s: %s at stamp %d holds %r; ground truth must be mono8 class indices"
                       % (path, topic, stamp_to_ns(msg.header.stamp), msg.encoding))
    if msg.step < msg.width or len(msg.data) != msg.height * msg.step:
        raise BagError("%s: %s at stamp %d: data length %d does not match %d rows of step %d"
                       % (path, topic, stamp_to_ns(msg.header.stamp), len(msg.data),
                          msg.height, msg.step))
    gt = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, :msg.width]
    if gt.size and int(gt.max()) >= NUM_CLASSES:
        bad = np.unique(gt[gt >= NUM_CLASSES])
        bad = bad[bad != IGNORE_INDEX]
        if bad.size:
            raise BagError("%s: %s at stamp %d holds values %s that are not class indices "
                           "(0..%d or %d)" % (path, topic, stamp_to_ns(msg.header.stamp),
                                              bad[:8].tolist(), NUM_CLASSES - 1, IGNORE_INDEX))
    return np.ascontiguousarray(gt)


class FrameReader:
    """Iterate a flight bag's camera frames paired with their ground truth by header stamp.

    After the iteration, ``unpaired_camera`` counts camera frames that had no ground truth
    (yielded with ``gt=None``) and ``unpaired_gt`` ground-truth masks without a camera frame.
    A malformed camera frame raises BagError, or, given ``on_malformed``, is passed to it as a
    ``MalformedFrame`` and left out (the frames after it keep their indices).
    """

    def __init__(self, path: PathLike, camera_topic: str = CAMERA_TOPIC,
                 gt_topic: Optional[str] = GT_TOPIC,
                 on_malformed: Optional[Callable[[MalformedFrame], None]] = None) -> None:
        self.path = Path(path)
        self.on_malformed = on_malformed
        self.camera_topic = camera_topic
        self.gt_topic = gt_topic
        reader = _open_reader(self.path)
        try:
            topics = reader.topics
            _check_topic(self.path, topics, camera_topic, "camera", (IMAGE_TYPE, COMPRESSED_TYPE))
            if gt_topic is not None:
                _check_topic(self.path, topics, gt_topic, "ground-truth")
            self.frame_count = int(topics[camera_topic].msgcount)
            self.duration_ns = int(reader.duration)
        finally:
            reader.close()
        self.unpaired_camera = 0
        self.unpaired_gt = 0

    def __len__(self) -> int:
        return self.frame_count

    def __iter__(self) -> Iterator[Frame]:
        reader = _open_reader(self.path)
        try:
            for frame in self._frames(reader):
                if frame is not None:
                    yield frame
        except _storage_errors() as error:
            if isinstance(error, BagError):
                raise
            raise BagError("%s: cannot read messages (corrupt or truncated bag?): %s: %s"
                           % (self.path, type(error).__name__, error)) from None
        finally:
            reader.close()

    def _frames(self, reader) -> Iterator[Optional[Frame]]:
        wanted = [self.camera_topic] + ([self.gt_topic] if self.gt_topic else [])
        connections = [c for c in reader.connections if c.topic in wanted]
        cameras: "OrderedDict[int, Tuple[object, int]]" = OrderedDict()  # stamp -> (msg, index)
        gts: "OrderedDict[int, np.ndarray]" = OrderedDict()
        index = 0
        for connection, log_time, raw in reader.messages(connections=connections):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except _storage_errors() as error:
                if connection.topic != self.camera_topic or self.on_malformed is None:
                    raise
                self.on_malformed(MalformedFrame(index, int(log_time), "%s: %s message at log time "
                                                 "%d does not deserialise: %s" % (
                                                     self.path, self.camera_topic, log_time, error)))
                index += 1
                continue
            stamp = stamp_to_ns(msg.header.stamp)
            if connection.topic == self.camera_topic:
                if stamp in cameras:
                    raise BagError("%s: two frames on %s share the stamp %d; frames are paired "
                                   "by stamp" % (self.path, self.camera_topic, stamp))
                cameras[stamp] = (msg, index)
                index += 1
                if not self.gt_topic:  # nothing to wait for: no frame is held back
                    yield self._frame(stamp, cameras.pop(stamp), None)
                    continue
            else:
                gts[stamp] = _gt_array(self.path, self.gt_topic, msg)
            # Pair what can be paired; give up on the oldest beyond the window.
            for ready in [s for s in cameras if s in gts]:
                yield self._frame(ready, cameras.pop(ready), gts.pop(ready))
            while self.gt_topic and len(cameras) > PAIRING_WINDOW:
                self.unpaired_camera += 1
                stamp, item = cameras.popitem(last=False)
                yield self._frame(stamp, item, None)
            while len(gts) > PAIRING_WINDOW:
                gts.popitem(last=False)
                self.unpaired_gt += 1
        for stamp, item in cameras.items():
            if self.gt_topic:
                self.unpaired_camera += 1
            yield self._frame(stamp, item, None)
        self.unpaired_gt += len(gts)

    def _frame(self, stamp: int, item: Tuple[object, int],
               gt: Optional[np.ndarray]) -> Optional[Frame]:
        msg, index = item
        try:
            rgb = msg_to_rgb(msg)
        except ImageConversionError as error:
            message = "%s: %s at stamp %d: %s" % (self.path, self.camera_topic, stamp, error)
            if self.on_malformed is None:
                raise BagError(message) from None
            self.on_malformed(MalformedFrame(index, stamp, message))
            return None
        if gt is not None and gt.shape != rgb.shape[:2]:
            raise BagError("%s: %s at stamp %d is %dx%d (WxH) but its frame on %s is %dx%d; "
                           "ground truth must match the camera frame"
                           % (self.path, self.gt_topic, stamp, gt.shape[1], gt.shape[0],
                              self.camera_topic, rgb.shape[1], rgb.shape[0]))
        return Frame(index, stamp, str(msg.header.frame_id), rgb, gt)


def read_frames(path: PathLike, camera_topic: str = CAMERA_TOPIC,
                gt_topic: Optional[str] = GT_TOPIC) -> List[Frame]:
    """Every frame of a flight bag, in order (small bags; iterate ``FrameReader`` otherwise)."""
    frames = list(FrameReader(path, camera_topic, gt_topic))
    return sorted(frames, key=lambda frame: frame.index)
