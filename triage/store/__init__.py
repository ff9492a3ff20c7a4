"""The ticket store: tables, migrations, the assignment service and feedback export."""
