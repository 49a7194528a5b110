"""camkit.data: WSOL datasets (wsolevaluation metadata, annotated folders) and the synthetic benchmark."""
from camkit.data.synthetic import (  # noqa: F401
    SHAPES, SyntheticWSOL, context_energy_share, export_wsol, habitat_accuracy, make_synthetic,
)
from camkit.data.wsol import (  # noqa: F401
    AnnotatedFolderDataset, CUBDataset, ILSVRCDataset, MetadataError, OpenImagesDataset, WSOLDataset,
    WSOLEvalTransform, collate_wsol, read_wsol_metadata,
)
