"""Shared pytest configuration for the Python tests of x_transformers_cpp."""


def pytest_configure(config):
    # Registered so that `pytest.mark.timeout` is accepted (and enforced) when pytest-timeout is installed, and
    # is a harmless, warning-free label when it is not; tests that spawn processes also enforce their own limit.
    config.addinivalue_line("markers", "timeout(seconds): fail the test if it runs longer than this")
