"""Sample records and an XLSX writer shared by the data tests (imported by test_data_io, test_data_cli)."""

from jaxvalues.data.schema import ActivationRecord, EvaluationRecord

ZH_STORY = "我在公司负责报销审核，好朋友交来一张明显多报了金额的发票。"
EN_STORY = "I review expense claims at work, and a close friend handed in a receipt that is clearly padded."


def sample_records():
    return [
        ActivationRecord("act-integrity-001-zh", "zh", "act-integrity-001", "integrity", "诚信 vs 友情",
                         ZH_STORY, "按规定退回发票并说明原因。", "诚信不能因为关系亲近就打折扣。", "睁一只眼闭一只眼批准。"),
        ActivationRecord("act-integrity-001-en", "en", "act-integrity-001", "integrity", "Integrity vs friendship",
                         EN_STORY, "Return the receipt and explain why.", "Honesty cannot bend for friends.",
                         "Look the other way and approve it."),
        EvaluationRecord("eval-harmony-002-zh", "zh", "eval-harmony-002", "harmony", "和谐 vs 个人便利",
                         "深夜楼上邻居一直在装修，我第二天一早要考试。", "上楼礼貌地请他们暂停。", "直接打电话投诉到物业并在群里指责他们。"),
        EvaluationRecord("eval-harmony-002-en", "en", "eval-harmony-002", "harmony", "Harmony vs convenience",
                         "My upstairs neighbours are renovating late at night and I have an exam at dawn.",
                         "Go upstairs and politely ask them to pause.", "Complain to management and shame them in the group chat."),
    ]


def write_workbook(path, sheets):
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for row in rows:
            ws.append(row)
    wb.save(path)


HEADER = ["Type", "Context", "Action1", "Action2"]
