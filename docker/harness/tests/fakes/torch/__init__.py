"""Stub torch for the fake engine tests: a visible "GPU", nothing else."""
__version__ = "0.0+fake"


class _Cuda:
    @staticmethod
    def is_available():
        return True

    @staticmethod
    def get_device_name(i=0):
        return "fake GPU"

    @staticmethod
    def empty_cache():
        pass

    @staticmethod
    def synchronize():
        pass


class _Version:
    cuda = "0.0+fake"


cuda = _Cuda()
version = _Version()
