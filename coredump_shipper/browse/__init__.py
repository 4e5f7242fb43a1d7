"""Reading what was shipped: `ls`, `ls --group`, `fetch`, and what they print."""
