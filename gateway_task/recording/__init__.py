"""Recording: the per-session recorder and the sinks it ships sealed chunks to.

`recorder` (frames and events → chunks; the one record-before-forward point), `sink` (the
interface), `batching` (what every sink shares: batches, bounded memory, supervised workers,
acks), `local` (the folder) and `firehose` (PutRecordBatch with `spool`, a disk spool).
"""

from gateway_task.recording.recorder import Recorder, RecordingUnavailable
from gateway_task.recording.sink import Sink, SinkError

__all__ = ["Recorder", "RecordingUnavailable", "Sink", "SinkError"]
