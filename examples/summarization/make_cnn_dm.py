"""CNN/DailyMail stories -> {train,val,test}.{source,target} (run by
prepare_cnn_dm.sh); the code is rdrop_experiments.cnn_dm."""

from rdrop_experiments.cnn_dm import main

if __name__ == "__main__":
    main()
