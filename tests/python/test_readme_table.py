"""README.md's tables of x-transformers keyword arguments and of the stack's forward arguments are the ones
scripts/kwargs_table.py derives from the code."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def kwargs_table():
    spec = importlib.util.spec_from_file_location("kwargs_table", ROOT / "scripts" / "kwargs_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_between(marker):
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"<!-- {marker}:start -->\n")[1].split(f"\n<!-- {marker}:end -->")[0]


def test_readme_table_matches_the_code():
    module = kwargs_table()
    assert readme_between("kwargs-table") == module.markdown()
    supported = [row for row in module.rows() if row[1] == "supported"]
    assert len(supported) > 60  # the table sees the native options, not an empty list


def test_readme_forward_table_matches_the_one_list():
    table = readme_between("forward-table")
    assert table == kwargs_table().forward_markdown()
    assert "| `in_attn_cond` |" in table  # the table sees the list, not an empty one
