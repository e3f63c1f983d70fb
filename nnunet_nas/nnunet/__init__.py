"""The only subpackage that imports nnunetv2."""
