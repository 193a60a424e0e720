"""`python -m agent.emulator` runs the emulator command."""

from agent.emulator import main

if __name__ == "__main__":
    main()
