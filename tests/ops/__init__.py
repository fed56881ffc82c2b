"""Operations tests: real processes as deployed, metrics, migrations, supervision."""
