"""
C{python -m uringreactor}: the deployment diagnostic (L{uringreactor.diagnose}).
"""

from uringreactor.diagnose import main

main()
