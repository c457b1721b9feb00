"""Shared pytest configuration for the Python tests of x_transformers_cpp."""


def pytest_configure(config):
    # Registered so that `pytest.mark.timeout` is accepted (and enforced) when pytest-timeout is installed, and
    # is a harmless, warning-free label when it is not; tests that spawn processes also enforce their own limit.
    config.addinivalue_line("markers", "timeout(seconds): fail the test if it runs longer than this")


def pytest_sessionstart(session):
    # benchmarks/gpu_check.sh runs the CUDA tests once per kernel family: XTC_TEST_BACKENDS lists the families
    # enabled for the whole session (x_transformers_cpp.backends), in priority order with XTC_TEST_BACKEND_PRIORITY=1.
    import os

    backends = os.environ.get("XTC_TEST_BACKENDS")
    if backends:
        from x_transformers_cpp import _C

        _C.set_enabled_backends([b for b in backends.split(",") if b],
                                os.environ.get("XTC_TEST_BACKEND_PRIORITY") == "1")
