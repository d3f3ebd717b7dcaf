"""Where untrusted programs run: the sandbox (`core`, with its fork server `server.py`) and the two ways WMTP
judges a program in it, on stdin/stdout tests (`stdio`: CodeContests) or on assertion tests (`function_tests`:
HumanEval, MBPP)."""
