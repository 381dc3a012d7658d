"""A custom check of migration 1's step (it asks for the migration's fixture) that fails on the mini data."""


def test_views_are_empty(migration_20250101000001_create_views, phase4_db):
    assert phase4_db.execute("SELECT count(*) FROM sales_with_details").fetchone() == (0,)
