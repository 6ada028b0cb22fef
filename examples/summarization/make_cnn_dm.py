"""CNN/DailyMail stories -> {train,val,test}.{source,target} (run by
prepare_cnn_dm.sh); the code is rdrop_experiments.cnn_dm."""

import sys

from rdrop_experiments.cnn_dm import main
from rdrop_experiments.errors import run_script

if __name__ == "__main__":
    sys.exit(run_script(main))
