"""What every side shares: the class table, metrics, detections, label and image I/O, the one
atomic file writer, the number formatter, the latency timer and the model-metadata contract.
numpy and OpenCV only (Python 3.8+): the drone, the ground station and training import it."""
