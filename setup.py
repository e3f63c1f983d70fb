from setuptools import find_packages, setup

setup(
    name="nnunet_nas",
    version="0.3.0",
    description="Neural architecture search (DiNTS, ...) as nnU-Net v2 trainers and configurations",
    packages=find_packages(include=["nnunet_nas", "nnunet_nas.*"]),
    package_data={"nnunet_nas": ["genotypes/zoo/*.json", "demo_data/hippocampus/*.json", "demo_data/hippocampus/*.md",
                                 "demo_data/hippocampus/imagesTr/*.nii.gz", "demo_data/hippocampus/labelsTr/*.nii.gz"]},
    python_requires=">=3.10",
    install_requires=["nnunetv2>=2.8.1,<2.9", "numpy", "matplotlib", "filelock>=3.12", "pyyaml"],
    extras_require={"test": ["pytest", "pytest-xdist", "monai==1.6.1", "scipy", "submitit>=1.5"], "slurm": ["submitit>=1.5"]},
    entry_points={"console_scripts": ["nnunet-nas=nnunet_nas.cli:main"]},
)
