"""``python -m lpcv_segmentation.model``: parameters and GMACs of a model (see ``--help``)."""
import sys

from lpcv_segmentation.model.segmodel import main

sys.exit(main())
