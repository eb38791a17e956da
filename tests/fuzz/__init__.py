"""The hostile-input fuzzer as a test package (docs/reliability.md, "The fuzzer"): generated cases run through
`resnetlab.cli.main` and judged. tests/test_fuzz.py runs a selection in CI; tools/fuzz_campaign.py runs
campaigns."""
