from django.contrib.auth.hashers import make_password
from django.db import migrations


def unusable_empty_passwords(apps, schema_editor):
    # Users made by create_api_key had password '' (which Django counts as usable, so a reset link could set one).
    User = apps.get_model("auth", "User")
    for user in User.objects.filter(password=""):
        user.password = make_password(None)
        user.save(update_fields=["password"])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_idempotency_key"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(unusable_empty_passwords, migrations.RunPython.noop)]
