import pytest
from sqlalchemy import text

from django_poolkit import get_engine


@pytest.mark.django_db(transaction=True)
def test_engine_talks_to_the_test_database():
    with get_engine().connect() as connection:
        assert connection.execute(text("SELECT current_database()")).scalar() == "test_poolkit"
