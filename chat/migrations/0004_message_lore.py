from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0003_drift_tiers"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="lore",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
