from eventbak.cli import main

main()
