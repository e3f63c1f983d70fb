"""The registered NAS methods: importing this package registers each (see nnunet_nas.registry)."""
from nnunet_nas.methods import dints  # noqa: F401
from nnunet_nas.methods import scnas  # noqa: F401
from nnunet_nas.methods import iac  # noqa: F401
from nnunet_nas.methods import dast  # noqa: F401
