from byoc import interrupts

interrupts.install()  # before the CLI's imports: a Ctrl+C while they load is an exit 130 too, not a traceback
try:
    from byoc.cli import main
except KeyboardInterrupt:
    interrupts.finish(interrupts.received() or 2)

main()
