"""History: hour/day/week/month/year rollups over the minute tables, and UTC periods."""
