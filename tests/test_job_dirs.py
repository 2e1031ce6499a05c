"""Job folder names derived from overrides."""

from benchmark.resolvers import MAX_DIR_NAME, job_dir_name


def test_plain_overrides_stay_readable():
    assert job_dir_name("extractor=resnet18,meta_arch=ssd") == "extractor=resnet18,meta_arch=ssd"
    assert job_dir_name("") == "default"


def test_path_separators_do_not_nest_folders():
    assert "/" not in job_dir_name("data.root=/data/voc/VOC2007")


def test_long_names_are_shortened_stably_and_uniquely():
    a = ",".join(f"bench.enabled.k{i}=false" for i in range(40))
    b = a + ",seed=1"
    na, nb = job_dir_name(a), job_dir_name(b)
    assert len(na.encode()) <= MAX_DIR_NAME and len(nb.encode()) <= MAX_DIR_NAME
    assert na == job_dir_name(a) and na != nb
