"""The domain of vmss-node-patcher: everything but the Azure Functions triggers.

Nothing in this package imports ``azure.functions``; heavy SDKs (kubernetes,
azure-mgmt-*, azure-storage-*) are imported inside the adapters that need them so a
cold start pays only for the code path it runs.
"""

PRODUCT_PREFIX = "vmss-node-patcher.io"
