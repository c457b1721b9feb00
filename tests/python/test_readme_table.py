"""README.md's table of x-transformers keyword arguments is the one scripts/kwargs_table.py derives from the code."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_table_matches_the_code():
    spec = importlib.util.spec_from_file_location("kwargs_table", ROOT / "scripts" / "kwargs_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- kwargs-table:start -->\n")[1].split("\n<!-- kwargs-table:end -->")[0]
    assert table == module.markdown()
    supported = [row for row in module.rows() if row[1] == "supported"]
    assert len(supported) > 60  # the table sees the native options, not an empty list
