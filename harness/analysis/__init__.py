"""Reading finished experiments: statistics, axes and figures, the report, and the check that
published files name no machine's folders. Imports every layer below it, never the CLI."""
