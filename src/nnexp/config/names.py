"""Names that cross module boundaries, defined once: run statuses, MLflow tags, metric names,
environment variables. No imports: every layer may use them."""

# -- how a run ended (the ``nnexp.status`` tag) -------------------------------------------------
COMPLETED = "completed"
DIVERGED = "diverged"
EARLY_STOPPED = "early_stopped"
PRUNED = "pruned"
FAILED = "failed"
KILLED = "killed"
RUNNING = "running"
#: statuses of runs that trained to a result (a figure or a study may use them)
TRAINED = (COMPLETED, DIVERGED, EARLY_STOPPED, PRUNED)

# -- MLflow tags --------------------------------------------------------------------------------
TAG_STATUS = "nnexp.status"
TAG_CONFIG_HASH = "nnexp.config_hash"
TAG_EXPERIMENT = "nnexp.experiment"
TAG_SWEEP = "nnexp.sweep"
TAG_STUDY = "nnexp.study"
TAG_STAGE = "nnexp.stage"
TAG_TRIAL = "nnexp.trial"
TAG_REPLICATE = "nnexp.replicate"  # a study trial's seed replicate: 0, 1, ...
TAG_ERROR = "nnexp.error"
TAG_DATASET_SHA256 = "nnexp.dataset_sha256"
TAG_BEST_CHILD = "nnexp.best_child"
TAG_SWEEP_OVERRIDES = "nnexp.sweep_overrides"
TAG_POPULATION = "nnexp.population"  # an id shared by the runs trained together as one population
TAG_POPULATION_SIZE = "nnexp.population_size"  # how many trained together (1: alone)
TAG_LINEAGE = "nnexp.lineage"  # population-based training: "images:donor@generation ..." where the run took a donor's network
TAG_MEMBER = "nnexp.member"  # population-based training: the member's index in its population (the donors' names)

# -- metrics --------------------------------------------------------------------------------------
SPLIT_NAMES = ("training", "validation", "test")
METRIC_NAMES = tuple(f"{s}_{k}" for s in SPLIT_NAMES for k in ("cost", "accuracy"))
#: wall-clock metrics: the only ones that may differ between two schedulings of one run
TIMING_METRICS = ("epoch_seconds", "train_seconds")

# -- environment variables handed from a sweep to its jobs ---------------------------------------
PARENT_ENV = "NNEXP_PARENT_RUN_ID"
SWEEP_ENV = "NNEXP_SWEEP_ID"
PARENT_RECORD_ENV = "NNEXP_PARENT_RECORD"  # the parent run's local record (when the store is down)
UPLOADS_ENV = "NNEXP_UPLOADS"  # the socket of the sweep's upload process (tracking.upload_process)

# -- where a run is recorded (tags set on every run; see nnexp.record) ---------------------------
TAG_RECORD_ID = "nnexp.record_id"
TAG_RECORD_DIR = "nnexp.record"
TAG_HOST = "nnexp.host"
TAG_PID = "nnexp.pid"
TAG_PID_START = "nnexp.pid_start"
TAG_REAPED = "nnexp.reaped"
TAG_RESUMED = "nnexp.resumed"  # how many times the run was resumed, and from where last

# -- files a study writes beside its decision log ------------------------------------------------
STUDY_PLOTS_FILE = "plots.json"  # the data of the log's plots: the search writes it, the report draws it
