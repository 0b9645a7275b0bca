"""`python -m bot`: run the QQ front end (the same as `qqrag bot`)."""

from bot.run import main

if __name__ == "__main__":
    main()
