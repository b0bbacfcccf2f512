"""horovod.tensorflow.sync_batch_norm's place: the layer lives in fusecomm.tensorflow.keras.layers
(Keras 3 layers); `fusecomm.tensorflow.SyncBatchNormalization` names it too."""
from fusecomm.tensorflow.keras.layers import SyncBatchNormalization

__all__ = ["SyncBatchNormalization"]
