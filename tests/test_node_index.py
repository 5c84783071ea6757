"""The node index's shortcuts give what the plain traversals give (they replaced them on hot paths, so a
difference would change findings): the order-free walk, the per-type scan, the fields that hold nodes, and the
memoised enclosing function. Checked on every static fixture."""

import ast
import glob
import os

import pytest

from doctor.analysis.index import NodeIndex, child_fields, nodes_under

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "fixtures", "static", "**", "*.py"), recursive=True))
TOKENS = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)


def trees():
    for path in FIXTURES:
        with open(path, encoding="utf-8") as fh:
            try:
                yield path, ast.parse(fh.read())
            except SyntaxError:
                continue


def test_there_are_fixtures():
    assert len(FIXTURES) > 50


def test_nodes_under_is_ast_walk_without_tokens():
    for path, tree in trees():
        for root in [tree, *[n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.For, ast.Call))]]:
            expected = [id(n) for n in ast.walk(root) if not isinstance(n, TOKENS)]
            got = [id(n) for n in nodes_under(root)]
            assert sorted(got) == sorted(expected), path
            assert len(got) == len(set(got)), path


def test_child_fields_skip_only_fields_without_nodes():
    for path, tree in trees():
        for node in ast.walk(tree):
            for name in set(node._fields) - set(child_fields(type(node))):
                value = getattr(node, name, None)
                values = value if isinstance(value, list) else [value]
                assert not any(isinstance(v, ast.AST) and not isinstance(v, TOKENS) for v in values), (path, type(node).__name__, name)


def test_scan_is_all_filtered_by_type_in_the_same_order():
    kinds = [(ast.Call,), (ast.ClassDef,), (ast.Assign, ast.AnnAssign), (ast.FunctionDef, ast.AsyncFunctionDef), (ast.For, ast.AsyncFor)]
    for path, tree in trees():
        index = NodeIndex(tree)
        for types in kinds:
            assert [id(n) for n in index.scan(*types)] == [id(n) for n in index.all() if isinstance(n, types)], (path, types)


def _naive_enclosing(index: NodeIndex, node: ast.AST) -> ast.AST:
    for anc in index.ancestors(node):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return anc
    return index.tree


@pytest.mark.parametrize("reverse", [False, True])
def test_enclosing_function_memo_agrees_with_the_walk_up(reverse):
    # Asked in both orders: memo entries made on the way up from deep nodes serve the shallow ones, and back.
    for path, tree in trees():
        index = NodeIndex(tree)
        nodes = index.all()
        for node in reversed(nodes) if reverse else nodes:
            assert index.enclosing_function(node) is _naive_enclosing(index, node), path
        foreign = ast.parse("def f():\n    x = 1\n").body[0].body[0]
        assert index.enclosing_function(foreign) is tree  # a node of another tree has no parents here
